# gwlbproxy appliance AMIs: Ubuntu LTS (24.04 by default, 22.04 with
# -var ubuntu=22.04) plus the gwlbproxy .deb, for amd64 and arm64 (Graviton).
#
# Build the packages first, then the images, from the repository root:
#   make release                      # dist/gwlbproxy_<version>_{amd64,arm64}.deb
#   packer init configs/packer
#   packer build -var version=<version> configs/packer
# One architecture only: -only='*.amazon-ebs.amd64' (or arm64).
# With Suricata on the decryption mirror (issue 19): -var suricata=true.
#
# Nothing is fetched from the internet beyond the base AMI and the Ubuntu
# archive packages the .deb depends on: configs/provision.sh (shared with
# the boot test) installs the .deb with apt and enables the unit. The image
# carries no live config: the CloudFormation stack's user data writes
# /etc/gwlbproxy/gwlbproxy.yaml and starts the unit.

packer {
  required_version = ">= 1.9.0"
  required_plugins {
    amazon = {
      source = "github.com/hashicorp/amazon"
      # CI validates against 1.2.1, the builder Packer 1.9.5 bundles.
      version = ">= 1.2.1, < 2.0.0"
    }
  }
}

variable "version" {
  type        = string
  description = "gwlbproxy version: picks dist/gwlbproxy_<version>_<arch>.deb and names the AMI."
  validation {
    condition     = can(regex("^[0-9A-Za-z.+~-]+$", var.version))
    error_message = "The version must be a Debian version string (as in the .deb's file name)."
  }
}

variable "ubuntu" {
  type        = string
  default     = "24.04"
  description = "Ubuntu LTS release of the base image: 24.04 or 22.04."
  validation {
    condition     = contains(["24.04", "22.04"], var.ubuntu)
    error_message = "The ubuntu release must be 24.04 or 22.04."
  }
}

variable "region" {
  type    = string
  default = "us-east-1"
}

variable "ami_regions" {
  type        = list(string)
  default     = []
  description = "Other regions to copy the AMIs to."
}

variable "subnet_id" {
  type        = string
  default     = ""
  description = "Subnet of the build instances (empty: the default VPC)."
}

variable "instance_type_amd64" {
  type    = string
  default = "c6in.large"
}

variable "instance_type_arm64" {
  type    = string
  default = "c7gn.large"
}

variable "dist_dir" {
  type        = string
  default     = "dist"
  description = "Where `make release` put the .deb files."
}

variable "provision_script" {
  type    = string
  default = "configs/provision.sh"
}

variable "suricata" {
  type        = bool
  default     = false
  description = "Also install Suricata 7 on the decryption mirror (issue 19; provision.sh GWLBPROXY_SURICATA=1). Ubuntu 24.04 only: 22.04's Suricata 6 is refused. The stack's IdsEnabled turns on the mirror and the alert shipping."
}

variable "encrypt_boot" {
  type        = bool
  default     = false
  description = "Encrypt the AMI's root snapshot (with the account's default EBS key)."
}

locals {
  # Canonical's image names: 24.04 images are published on gp3 root volumes.
  ubuntu_image = {
    "24.04" = "ubuntu/images/hvm-ssd-gp3/ubuntu-noble-24.04"
    "22.04" = "ubuntu/images/hvm-ssd/ubuntu-jammy-22.04"
  }
  stamp = formatdate("YYYYMMDDhhmmss", timestamp())
  ids   = var.suricata ? "-suricata" : ""
}

# Settings shared by both architectures; the build block adds per
# architecture the instance type, the base image and the name.
source "amazon-ebs" "ubuntu" {
  region          = var.region
  ami_regions     = var.ami_regions
  subnet_id       = var.subnet_id
  ssh_username    = "ubuntu"
  ena_support     = true
  encrypt_boot    = var.encrypt_boot
  ami_description = "gwlbproxy ${var.version}: GWLB egress inspection appliance (Ubuntu ${var.ubuntu})"

  # The build instance itself talks to IMDS with tokens only, like the fleet.
  metadata_options {
    http_endpoint               = "enabled"
    http_tokens                 = "required"
    http_put_response_hop_limit = 1
  }

  launch_block_device_mappings {
    device_name           = "/dev/sda1"
    volume_size           = 8
    volume_type           = "gp3"
    delete_on_termination = true
  }

  run_tags = {
    Name = "packer-gwlbproxy-${var.version}"
  }
}

build {
  name = "gwlbproxy"

  source "source.amazon-ebs.ubuntu" {
    name          = "amd64"
    instance_type = var.instance_type_amd64
    ami_name      = "gwlbproxy-${var.version}-ubuntu-${var.ubuntu}-amd64${local.ids}-${local.stamp}"
    source_ami_filter {
      filters = {
        name                = "${local.ubuntu_image[var.ubuntu]}-amd64-server-*"
        architecture        = "x86_64"
        root-device-type    = "ebs"
        virtualization-type = "hvm"
      }
      owners      = ["099720109477"] # Canonical
      most_recent = true
    }
    tags = {
      Name                = "gwlbproxy-${var.version}-amd64"
      "gwlbproxy:version" = var.version
      "gwlbproxy:arch"    = "amd64"
      "gwlbproxy:base"    = "{{ .SourceAMIName }}"
    }
  }

  source "source.amazon-ebs.ubuntu" {
    name          = "arm64"
    instance_type = var.instance_type_arm64
    ami_name      = "gwlbproxy-${var.version}-ubuntu-${var.ubuntu}-arm64${local.ids}-${local.stamp}"
    source_ami_filter {
      filters = {
        name                = "${local.ubuntu_image[var.ubuntu]}-arm64-server-*"
        architecture        = "arm64"
        root-device-type    = "ebs"
        virtualization-type = "hvm"
      }
      owners      = ["099720109477"] # Canonical
      most_recent = true
    }
    tags = {
      Name                = "gwlbproxy-${var.version}-arm64"
      "gwlbproxy:version" = var.version
      "gwlbproxy:arch"    = "arm64"
      "gwlbproxy:base"    = "{{ .SourceAMIName }}"
    }
  }

  # source.name is the architecture: each image gets its own package.
  provisioner "file" {
    source      = "${var.dist_dir}/gwlbproxy_${var.version}_${source.name}.deb"
    destination = "/tmp/gwlbproxy_${var.version}_${source.name}.deb"
  }

  provisioner "file" {
    source      = var.provision_script
    destination = "/tmp/provision.sh"
  }

  provisioner "shell" {
    execute_command = "chmod +x {{ .Path }}; sudo -E sh -eux '{{ .Path }}'"
    # sudo -E keeps it for provision.sh.
    environment_vars = ["GWLBPROXY_SURICATA=${var.suricata ? "1" : "0"}"]
    inline = [
      # cloud-init may still be running apt on first boot; wait it out.
      "cloud-init status --wait >/dev/null || true",
      "sh /tmp/provision.sh /tmp/gwlbproxy_${var.version}_${source.name}.deb",
      "rm -f /tmp/provision.sh /tmp/gwlbproxy_${var.version}_${source.name}.deb",
    ]
  }

  post-processor "manifest" {
    output     = "${var.dist_dir}/packer-manifest.json"
    strip_path = true
  }
}
