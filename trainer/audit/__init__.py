"""Know the data before trusting a number: duplicates, leakage, suspected label errors, outliers."""
