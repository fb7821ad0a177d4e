#!/usr/bin/env python
"""The Django test project: `python tests/django_project/manage.py test` runs searchtests with
Django's test runner against IMGSEARCH_DATABASE_URL (the embedded server in the pytest run)."""

import os
import sys

if __name__ == "__main__":
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "project.settings")
    from django.core.management import execute_from_command_line

    execute_from_command_line(sys.argv)
