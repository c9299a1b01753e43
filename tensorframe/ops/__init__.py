"""Numerical building blocks: scatter sums, radial/angular bases, basis products, symmetry."""
