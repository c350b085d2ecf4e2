package evetail

// SpoolView lets the external tests check that *logship.Shipper gives the
// tailer what it needs to skip already spooled alerts after a crash.
type SpoolView = spoolView
