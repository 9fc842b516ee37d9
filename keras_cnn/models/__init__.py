"""Model builders: the from-scratch zoo, transfer bases and heads."""
