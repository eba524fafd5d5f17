"""mountd"""
