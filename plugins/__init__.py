"""Built-in plugins. Each module is an ordinary plugin registered through the ``arena`` entry-point
group in pyproject.toml; the core never imports this package by name."""
