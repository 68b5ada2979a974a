"""The user's command line over the GMem services:
`python -m gmem generate|insert|interpolate|search|info`.
"""
