// Package configs holds the deployment artefacts of gwlbproxy (the systemd
// unit, the Packer AMI template, the CloudFormation stack) and, in its
// tests, their offline validation: the template against the CloudFormation
// resource specification, the instance role against the AWS calls the Go
// sources actually make, and the unit and AMI against each other.
//
// The package has no code of its own; it exists so `go test ./configs/...`
// runs those checks in CI (see .ci/validate-configs.sh).
package configs
