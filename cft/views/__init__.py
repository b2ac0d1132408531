"""Terminal heatmaps and PNGs of routes and priors."""
