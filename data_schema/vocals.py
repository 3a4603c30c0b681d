"""Tables of the vocals-to-lyrics stages (separation, transcripts, lyrics, lyrics_matches)."""
