"""Figures and the HTML report, built from the CSVs a run writes (runner side: the core never imports it)."""
