"""What a finished sweep becomes: the summary and console tables, plots, mask pictures, TensorBoard runs."""
