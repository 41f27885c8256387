"""The saga dashboard: admin HTML pages and their static JS/CSS, mounted into the gateway at /dashboard."""
