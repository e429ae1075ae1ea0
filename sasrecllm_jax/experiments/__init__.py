"""The experiment grid (grid.py) and its summary (summary.py, seeds.py, claims.py): see __main__.py."""
