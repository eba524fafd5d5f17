"""Commands that look inside images without mounting them: layers, ls, cat, tree, diff."""
