"""The dashboard page (static HTML/CSS/JS shipped in the package)."""
