"""Looking at graphs: summaries now; diffs and HTML reports build on the same views."""
