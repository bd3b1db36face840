"""Synthesis tasks: doc2query (DAGR), query_negative (Don't Retrieve, Generate), syntriever (Syntriever stage 1)."""
