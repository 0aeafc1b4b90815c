"""Visualisation of what SELFY sees: STSS maps, motion fields, Grad-CAM."""
