package config

// Components holds the per-component sections. Each component owns its
// Config type, defaults and validation; this file only composes them.
type Components struct{}

func defaultComponents() Components { return Components{} }

func (c *Components) validate() error { return nil }
