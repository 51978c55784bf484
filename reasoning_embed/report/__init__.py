"""The study report: sweep runs -> the paper's table with honest statistics, realignment and HRSA figures."""
