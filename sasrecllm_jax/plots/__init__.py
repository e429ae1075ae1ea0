"""Charts of runs: training curves per phase with test AUC by part (curves.py), the grid's warm/cold chart
(warm_cold.py), and the styles they share (style.py)."""
