"""chatalign data/builtin."""
