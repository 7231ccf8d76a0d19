"""The command line: thin click commands over pipeline/ and models/, grouped by area, with what
only a terminal needs (tables, progress bars, error rendering). cli.py assembles them."""
