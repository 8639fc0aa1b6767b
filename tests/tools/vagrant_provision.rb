# Print one machine's inline shell provisioner from a Vagrantfile, without
# Vagrant: the Vagrantfile runs against stubs that record `provision`.
# Used by tests/vagrant_lab.rs to check the script the lab's server runs.
# usage: ruby vagrant_provision.rb VAGRANTFILE MACHINE
$scripts = {}

class Stub
  def initialize(machine)
    @machine = machine
  end

  def define(name, **_opts)
    yield Stub.new(name)
  end

  def provision(_kind, inline: nil, **_opts)
    $scripts[@machine] = inline
  end

  def method_missing(_name, *_args, **_opts)
    yield Stub.new(@machine) if block_given?
    Stub.new(@machine)
  end

  def respond_to_missing?(*)
    true
  end
end

module Vagrant
  def self.configure(_version)
    yield Stub.new(nil)
  end
end

load ARGV[0]
print $scripts.fetch(ARGV[1])
