"""The project's command-line tool: run the local fleet, seed it, place and follow orders."""
