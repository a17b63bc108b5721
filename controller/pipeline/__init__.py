"""The deploy: journaled steps and their order."""
