"""Small built-in datasets."""
