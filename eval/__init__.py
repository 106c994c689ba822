"""chatalign eval."""
