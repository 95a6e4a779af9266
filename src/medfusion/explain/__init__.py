"""--mode explain: where the image branches look, what the forest uses, what each branch adds.

Every figure is computed on the outer validation patients of each fold with that fold's own
bundle, so it explains the model that produced the reported score. See docs/explain.md.
"""
