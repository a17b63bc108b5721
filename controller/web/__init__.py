"""Pages for people: sign-in, projects, environments, deployments, versions and runs."""
