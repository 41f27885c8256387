"""Load and overhead benchmarks that print figures (`make bench`); see bench/README.md."""
