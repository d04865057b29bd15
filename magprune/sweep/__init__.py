"""The engine: a sweep's settings (config), one level's test (level), the schedules, the store of rows, the ranks."""
