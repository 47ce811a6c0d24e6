"""Command-line interfaces: thin argparse front ends over typed ``run_*`` functions."""
