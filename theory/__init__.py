"""theory: the H2O paper's submodular framing, exact solvers and bounds (filled by the oracle/theory work)."""
