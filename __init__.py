"""songmill: curate a raw music collection into a text-and-lyrics-to-music training corpus, and
train an ACE-Step-style Music DCAE + Linear DiT on it.

The repository's top-level folders install as this package's subpackages (see pyproject.toml):
`songmill.data_schema` <- `songmill.model` <- `songmill.annotate` <- `songmill.train` <-
`songmill.flows`, each importing only those to its left.
"""

__version__ = "0.2.0"
