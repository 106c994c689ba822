"""chatalign stages."""
