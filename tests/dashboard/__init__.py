"""Tests of the saga dashboard (router, and the pages in a real headless Chromium)."""
