"""theory: the H2O paper's submodular framing (arXiv 2306.14048, App. D), checked by computation.

What is optimised is apart from how (after apricot; docs/architecture.md):

- :mod:`theory.functions` - set functions (the paper's accumulated score with concave h,
  facility location, weighted coverage, log-sum-exp; non-submodular attention functions
  for teaching), each declaring whether it is monotone and submodular;
- :mod:`theory.exact` - brute-force and closed-form optima;
- :mod:`theory.greedy` - naive, lazy and noisy greedy, recording marginal gains;
- :mod:`theory.bounds` - Nemhauser's (1 - 1/e) (Thm D.17), the noisy-gain bound (Cor. D.18)
  and OUR a-posteriori certificate (shaped like Thm D.32, valid for any set - not the theorem);
- :mod:`theory.submodularity` - exhaustive checkers returning concrete counterexamples;
- :mod:`theory.dynamic` - greedy eviction on growing ground sets (the paper's Algorithm 2);
- :mod:`theory.paper` - the paper's chain computed literally: theta (Def. D.25/D.26), gamma
  (Def. D.28, both directions), eps0, Lemma D.30, Thm D.32's hypotheses;
- :mod:`theory.d4` - Def. D.4 (submodularity w.r.t. the cache Z) on real trace units;
- :mod:`theory.counterexamples` - exact instances where App. D's argument breaks;
- :mod:`theory.report`, :mod:`theory.check` - all of it on a real trace
  (``python -m theory.check TRACE``).
"""
