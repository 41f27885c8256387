"""Code that at least two services of the fleet use: settings, logging, database, errors, discovery, auth."""
