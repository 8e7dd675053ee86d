package main

import "runtime/debug"

func init() {
	register(&command{
		name:    "version",
		summary: "print the driftstore version and build information",
		run: func(c *cli, args []string) error {
			if err := c.parse(c.flagSet(), args); err != nil {
				return err
			}
			v := "devel"
			if bi, ok := debug.ReadBuildInfo(); ok && bi.Main.Version != "" {
				v = bi.Main.Version
			}
			if c.globals.json {
				return c.printJSON(map[string]string{"version": v})
			}
			c.printf("driftstore %s\n", v)
			return nil
		},
	})
}
