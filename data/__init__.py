"""chatalign data."""
