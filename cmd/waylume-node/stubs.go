package main

func (c *cli) migrateCmd(args []string) int { return exitFail }
func (c *cli) nodeCmd(args []string) int    { return exitFail }
func (c *cli) checkCmd(args []string) int   { return exitFail }
