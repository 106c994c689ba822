"""chatalign reward."""
