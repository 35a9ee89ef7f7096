"""theory: the H2O paper's submodular framing, checked by computation.

What is optimised is apart from how (after apricot; docs/architecture.md):

- :mod:`theory.functions` - set functions (the paper's accumulated score with concave h,
  facility location, weighted coverage, log-sum-exp; non-submodular attention functions
  for teaching), each declaring whether it is monotone and submodular;
- :mod:`theory.exact` - brute-force and closed-form optima;
- :mod:`theory.greedy` - naive, lazy and noisy greedy, recording marginal gains;
- :mod:`theory.bounds` - Nemhauser's (1 - 1/e), the noisy-gain bound (Cor. D.18) and a
  measured certificate in the shape of the dynamic bound (Thm D.32);
- :mod:`theory.submodularity` - exhaustive checkers returning concrete counterexamples;
- :mod:`theory.dynamic` - greedy eviction on growing ground sets (the paper's Algorithm 2);
- :mod:`theory.report`, :mod:`theory.check` - the dynamic bound on a real trace
  (``python -m theory.check TRACE``).
"""
