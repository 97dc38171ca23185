"""`trialflow report …`: the data manager's plots and the monitoring page.

`data` (pure: what each plot shows), `plots` (matplotlib, imported only when a plot is made),
`html` (the self-contained page).
"""
