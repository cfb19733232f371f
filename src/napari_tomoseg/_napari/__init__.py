"""napari front end: reader, writer, sample data and dock widgets (thin layers over the core)."""
