"""Build side: fusion building blocks, their configs, and the ExportSpec registry (torch allowed)."""
