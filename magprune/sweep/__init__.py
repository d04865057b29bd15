"""The engine: a sweep's settings (config), one level's test (level), the searches (which levels), the store of rows, the ranks."""
