"""Tasks (what a problem file defines), the built-in ones, and task -> search setup."""
