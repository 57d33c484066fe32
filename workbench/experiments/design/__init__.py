"""What a grid is: experiment specs, profiles, declared questions and the procedures they compare."""
