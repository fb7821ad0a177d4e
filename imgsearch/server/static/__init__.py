"""The search page's files (a package only so that setuptools ships them)."""
