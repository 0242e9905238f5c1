"""The `bullwait` command line: a thin shell over the library (the library never imports it)."""
